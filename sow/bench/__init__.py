"""`sow bench`: the speed benchmark (`benchmark`), its settings and typed reports (`settings`) and its chart (`chart`).

May import everything in the library except the CLI.
"""
