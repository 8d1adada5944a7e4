"""`sow bench`: the speed benchmark and the cost model, as a library that returns typed reports and never prints.

`settings` (what to measure), `reports` (what comes back), `timing`, `flops`, `cost_model`
(FLOPs on the meta device), `dam_share`, `memory`, the orchestration in `benchmark`, and the
renderer `render` (rich tables, printed by the CLI; the PNG chart is `sow.viz.bench_chart`). May import everything
in the library except the CLI.
"""

from sow.bench.benchmark import run_bench
from sow.bench.cost_model import cost_model
from sow.bench.reports import BenchReport, CostReport
from sow.bench.settings import BenchSettings

__all__ = ["BenchReport", "BenchSettings", "CostReport", "cost_model", "run_bench"]
