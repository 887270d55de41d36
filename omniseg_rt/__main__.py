"""``python -m omniseg_rt`` runs the command line."""

from omniseg_rt.cli import main

main()
