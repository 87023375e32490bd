from poi_cli.cli import run

run(prog_name="poi")
