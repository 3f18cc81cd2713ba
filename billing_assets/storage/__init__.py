"""The billing database: schema, migrations and the queries each asset runs."""
