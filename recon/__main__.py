from recon.cli import entry

entry()
