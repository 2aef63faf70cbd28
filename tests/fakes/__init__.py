"""Loopback fakes of the services distilflow talks to (OpenAI-compatible endpoints, the KFP API, Kubernetes,
Kubeflow Trainer, PAI-DLC, PAI-EAS, OSS, a faulty S3 proxy). Each validates request bodies like the real
service and runs on 127.0.0.1."""
