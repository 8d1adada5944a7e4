"""`sow bench`: the speed benchmark (`benchmark`) and its chart (`chart`).

May import everything in the library except the CLI.
"""
