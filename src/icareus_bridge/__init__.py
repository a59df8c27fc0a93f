"""icareus-bridge: CRM.COM subscription actions on Kafka, provisioned into Icareus Suite."""

__version__ = "0.1.0"
