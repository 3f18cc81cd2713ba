"""Who pays for a user: the accounts file, validated on load."""
