"""Delivery of remittance records to downstream targets (Kill Bill over HTTPS, CSV files).

This package knows nothing about the database: it turns one record into one
answer (`Outcome`), so the status machine that owns retries and dead letters
can live with the remittances tables and be tested against a real receiver.
"""
