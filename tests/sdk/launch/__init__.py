"""Tests of `distilflow.launch`: Kubeflow TrainJob and PAI-DLC launchers."""
