from poi_cli.cli import app

app(prog_name="poi")
