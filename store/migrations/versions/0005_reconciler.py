"""reconciler: the order's checkout input, and the reconciler's record of what it did"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    # Nullable, no default: rows from before keep NULL (the reconciler fails those instead of
    # restarting them, and a retry with their key rebuilds the input as it always did).
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("checkout_input", sa.JSON(), nullable=True))
    op.create_table(
        "reconciliations",
        sa.Column("subject_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("detail", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("at", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.PrimaryKeyConstraint("subject_id", "action"),
    )


def downgrade() -> None:
    op.drop_table("reconciliations")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("checkout_input")
