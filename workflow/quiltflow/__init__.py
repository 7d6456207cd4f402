"""Stage logic of the Quilt-1M classification workflow.

Each module is one stage (or a piece of one), importable and testable without Snakemake.
Rules in ``workflow/rules`` pass paths and params to thin scripts in ``workflow/scripts``.
"""

__version__ = "0.1.0"
