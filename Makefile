# Two entry points for a fresh machine (see README):
#   make demo   installs hyco-rag with the embedded models and runs the main job offline
#   make test   installs the development tools and runs the test suite, notebooks and docs build
.PHONY: demo test setup docs

demo:
	scripts/setup.sh
	HF_HUB_OFFLINE=1 .venv/bin/hyco-rag demo

test:
	scripts/test.sh

setup:
	scripts/setup.sh dev

docs:
	.venv/bin/mkdocs serve
