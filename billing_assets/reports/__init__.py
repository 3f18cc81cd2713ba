"""Read-side reports for operators (`billing status`, the health checks): queries composed, no Dagster."""
