"""The built-in model organism (SPEC section 7): a small Qwen3 trained by steerexp itself."""
