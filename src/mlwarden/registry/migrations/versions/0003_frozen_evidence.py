"""Evidence frozen at approval (versions.evidence) and case-insensitive unique user names.

Versions approved before this revision get, as their frozen evidence, every attachment created up to the time of
their last allowed approve or release in the audit log (every attachment when the log has none): evidence an
attacker added afterwards is not frozen. Two users whose names differ only in case make the upgrade fail, naming
them: rename one first.

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-10 10:00:00.000000
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_APPROVED_STATES = ("approved", "deployed", "quarantined", "rolled_back", "retired")


def upgrade() -> None:
    """Apply."""
    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("evidence", sa.JSON(), nullable=True))
    bind = op.get_bind()
    clashes = bind.execute(
        sa.text("SELECT lower(username) FROM users GROUP BY lower(username) HAVING count(*) > 1")
    ).fetchall()
    if clashes:
        names = ", ".join(sorted(str(row[0]) for row in clashes))
        raise RuntimeError(f"user names differing only in case must be renamed before upgrading: {names}")
    op.create_index("ix_users_username_casefold", "users", [sa.text("lower(username)")], unique=True)
    _freeze_existing(bind)


def _freeze_existing(bind: Any) -> None:
    versions = bind.execute(
        sa.text(
            "SELECT v.id, m.name, v.number FROM versions v JOIN models m ON m.id = v.model_id WHERE v.state IN :states"
        ).bindparams(sa.bindparam("states", expanding=True)),
        {"states": list(_APPROVED_STATES)},
    ).fetchall()
    for version_id, name, number in versions:
        approved_at = bind.execute(
            sa.text(
                "SELECT max(timestamp) FROM audit_entries WHERE subject = :subject AND allowed = :yes "
                "AND action IN ('approve', 'release')"
            ),
            {"subject": f"model:{name}:{number}", "yes": True},
        ).scalar()
        query = "SELECT id, kind, digest, created_at FROM attachments WHERE version_id = :vid ORDER BY id"
        rows = bind.execute(sa.text(query), {"vid": version_id}).fetchall()
        frozen = [
            {"id": r[0], "kind": r[1], "digest": r[2]}
            for r in rows
            if approved_at is None or _not_after(r[3], approved_at)
        ]
        table = sa.table("versions", sa.column("id", sa.Integer), sa.column("evidence", sa.JSON))
        bind.execute(table.update().where(table.c.id == version_id).values(evidence=frozen))


def _not_after(created: Any, approved: Any) -> bool:
    try:
        return str(created)[:26] <= str(approved)[:26] if isinstance(created, str) else created <= approved
    except TypeError:
        return True


def downgrade() -> None:
    """Revert."""
    op.drop_index("ix_users_username_casefold", table_name="users")
    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.drop_column("evidence")
