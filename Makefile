.PHONY: install test lint codegen run

install:
	python3 -m pip install -e '.[test]'

test:
	python3 -m pytest tests -q

lint:
	ruff check node cluster storage tests

codegen:
	python3 -m node.amqp.codegen

run:
	warren
