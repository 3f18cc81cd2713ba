"""Pure billing arithmetic: no Dagster, no HTTP, no database.

Everything that decides how many bytes (and how much money) a user is charged
lives here, so it can be tested on its own and reasoned about without I/O.
"""
