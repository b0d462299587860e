"""The filters as PyTorch: functions on tensors (:mod:`.functional`), their ``nn.Module``
twins (:mod:`.modules`) whose ``forward`` runs the engine's plan, chains (:mod:`.chains`),
modules built from the registry's leaves (:mod:`.builders`), and export as plain torch layers,
ONNX, torch.export and TorchScript (:mod:`.export`)."""
