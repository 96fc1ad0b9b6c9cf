"""``python -m services.lab {up,down,status}``: the lab commands without the full CLI."""

from services.lab.cli import lab_group

if __name__ == "__main__":
    lab_group()
