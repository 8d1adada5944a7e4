"""`sow bench`: the speed benchmark (`benchmark`), DAM's measured share of a UNet call (`dam_share`) and the chart (`chart`).

May import everything in the library except the CLI.
"""
