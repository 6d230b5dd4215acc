"""Customer Value Marketing playbook: the library behind the data, knowledge, personalisation and monitoring notebooks.

Modules by concern: contract, config, sources, quality, customer_db (data); features, rfm, clv, value, churn,
lifecycle, personas, anomalies, knowledge (knowledge); offers, policy, uplift, assignment, control_groups,
personalisation (offers); experiments, monitoring, cards (monitoring); report, runner, cli, demo (plumbing).
"""
import cvm.config  # noqa: F401  (so notebooks can write cvm.config.load_config after `import cvm`)

__version__ = "0.1.0"
