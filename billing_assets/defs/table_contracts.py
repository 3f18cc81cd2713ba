"""The billing tables as Dagster metadata, shown on the assets that write them.

Other services read these tables (DESIGN.md: "the read contract"), so the UI
shows each asset's table and columns from the SQLAlchemy models themselves:
a column added without a migration fails test_migrations, and one added with
it appears here without anybody copying it.
"""

from __future__ import annotations

import dagster as dg
from sqlalchemy import Table

OWNERS = ["team:billing"]


def _column(column) -> dg.TableColumn:
    return dg.TableColumn(
        name=column.name,
        type=str(column.type.compile()) if not hasattr(column.type, "impl") else str(column.type.impl.compile()),
        description=("part of the primary key" if column.primary_key else None),
        constraints=dg.TableColumnConstraints(nullable=bool(column.nullable) and not column.primary_key),
    )


def table_metadata(table: Table) -> dict:
    """`dagster/table_name` and `dagster/column_schema` for the asset that owns `table`."""
    return {
        "dagster/table_name": table.name,
        "dagster/column_schema": dg.TableSchema(columns=[_column(column) for column in table.columns]),
    }
