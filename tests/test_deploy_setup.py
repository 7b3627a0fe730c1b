"""scripts/deploy's one-process steps (site_backup/deploy_setup.py) when they cannot run; what
they make on a real server is checked by test_deployment.py and test_services.py."""

from __future__ import annotations

from site_backup import deploy_setup
from tests.conftest import free_port


def test_without_a_prefect_server_it_says_which_url_and_how_to_start_one(capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    with temporary_settings(updates={PREFECT_API_URL: url}):
        assert deploy_setup.main(["site-backup"]) == 1
    said = capsys.readouterr()
    assert said.out == ""
    assert said.err.startswith(f"error: the Prefect server at {url} does not answer")
    assert "start it (`make server`) or set PREFECT_API_URL" in said.err and "Traceback" not in said.err


def test_without_a_pool_name_it_shows_its_usage(capsys):
    assert deploy_setup.main([]) == 2
    assert "usage: python -m site_backup.deploy_setup WORK_POOL" in capsys.readouterr().err
