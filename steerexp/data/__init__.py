"""Data: contrast pairs, eval questions and prompts, user-file readers, answer words, regressor transforms.

Also holds the shipped package-data text files (suffix lists, neutral prompts).
"""
