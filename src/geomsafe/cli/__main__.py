"""`python -m geomsafe.cli` (used by `accelerate launch -m geomsafe.cli finetune ...`)."""

from geomsafe.cli import main

main(prog_name="geomsafe")
