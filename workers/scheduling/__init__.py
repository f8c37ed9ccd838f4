"""The pure scheduling policy: which claimed job runs next, and on which model replica."""
