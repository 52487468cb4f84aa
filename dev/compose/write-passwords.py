"""Write the Simple auth manager's passwords file from the environment (run by airflow-init).

The admin password comes from AIRFLOW_ADMIN_PASSWORD (.env); the file lives on a volume shared
with the api-server, so no password is ever baked into an image.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> int:
    path = Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    user, password = (
        os.environ.get("AIRFLOW_ADMIN_USER", "admin"),
        os.environ.get("AIRFLOW_ADMIN_PASSWORD", ""),
    )
    if not password:
        print("AIRFLOW_ADMIN_PASSWORD is empty: set it in .env", file=sys.stderr)
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({user: password}))
    path.chmod(0o600)
    print(f"wrote the login of {user!r} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
