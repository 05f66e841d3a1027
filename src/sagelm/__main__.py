"""`python -m sagelm` (for launchers such as `accelerate launch -m sagelm train CONFIG.yaml`)."""

from sagelm.cli import main

main()
