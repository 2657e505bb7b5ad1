# The two front-door commands (README): `make demo` and `make test`.
PY ?= python3

.PHONY: install demo test cluster-up cluster-down

install:
	$(PY) -m pip install -q --root-user-action=ignore -e '.[test]'

demo: install
	$(PY) launch/submit.py preset=tiny stage=all cluster=local

cluster-up:
	bash slurm/local-cluster/start.sh

cluster-down:
	bash slurm/local-cluster/stop.sh

test: install cluster-up
	$(PY) -m pytest
