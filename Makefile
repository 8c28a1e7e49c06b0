# The two commands of the README's Quickstart: `make demo` and `make test`.
# Both set up everything they need on a fresh machine where PostgreSQL and
# RabbitMQ listen on their default local ports.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUN_ID := $(shell date +%s)$(shell od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
export TPX_TEST_DATABASE ?= tpx_test_$(RUN_ID)
export TPX_TEST_AMQP_PREFIX ?= tpx-test-$(RUN_ID)

.PHONY: test demo venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "==> creating $(VENV) and installing tpx with its test dependencies"
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip > $(VENV)/install.log 2>&1 \
	  && $(PY) -m pip install --disable-pip-version-check -e '.[test]' >> $(VENV)/install.log 2>&1 \
	  || { tail -n 30 $(VENV)/install.log; echo "make: installing tpx failed; the whole log is $(VENV)/install.log"; exit 1; }
	@echo "==> installed (log: $(VENV)/install.log)"
	@touch $@

# promtool checks the alert rules (tests/deploy/test_monitoring.py): Debian's prometheus package has
# it; only the binary is unpacked into the venv, nothing is installed system-wide or started.
PROMTOOL_BIN := $(VENV)/tools/usr/bin/promtool
$(PROMTOOL_BIN):
	@command -v apt-get > /dev/null && mkdir -p $(VENV)/tools && cd $(VENV)/tools \
	  && apt-get download prometheus > download.log 2>&1 && dpkg -x prometheus_*.deb . && rm -f prometheus_*.deb \
	  && echo "==> promtool unpacked into $(VENV)/tools" \
	  || echo "==> promtool unavailable (no Debian prometheus package): the rules get structural checks only"

test: venv $(PROMTOOL_BIN)
	@$(VENV)/bin/lint-imports --no-cache --no-logo > $(VENV)/lint-imports.log 2>&1 \
	  && echo "==> import boundaries hold: $$(grep -c ' KEPT$$' $(VENV)/lint-imports.log) contracts kept (pyproject.toml [tool.importlinter])" \
	  || { cat $(VENV)/lint-imports.log; echo "make: an import crosses a boundary of the design (above); see docs/decisions.md"; exit 1; }
	@$(PY) tests/preflight.py
	@status=0; PROMTOOL=$$(test -x $(PROMTOOL_BIN) && echo $(abspath $(PROMTOOL_BIN))) $(PY) -m pytest $(PYTEST_ARGS) \
	  || status=$$?; $(PY) tests/preflight.py --drop; exit $$status

demo: venv
	@$(PY) -m tpx.cli demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
