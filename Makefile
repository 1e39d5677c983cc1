.PHONY: install test lint codegen run image compose-test

install:
	python3 -m pip install -e '.[test]'

test:
	python3 -m pytest tests -q

lint:
	ruff check node cluster storage tests

codegen:
	python3 -m node.tools.codegen

run:
	warren

# BASE_IMAGE=localhost/warren-base:bookworm where no registry is reachable (.ci/container-engine.sh)
image:
	docker build -f deploy/Dockerfile $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) -t warrenmq .

compose-test:
	python3 -m pytest tests/deploy -q -rs
