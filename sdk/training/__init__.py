"""What the training stages (sft, dpo, reward, rl) share, one module per concern; heavy imports stay
inside functions.

- ``fields``: config field blocks (scale and checkpoints, launchers); the only module configs import;
- ``data``: finding and reading a stage's rows, rendering chats, counting their tokens;
- ``arguments``: TRL arguments (CPU/GPU defaults, DeepSpeed, FSDP, LoRA);
- ``callbacks``: progress lines for KFP logs;
- ``lean``: a step without host syncs (Trainer arguments, metrics kept on the device);
- ``throughput``: tokens trained, padding share and tokens/s counted from the batches trained on;
- ``kernels``: Liger's fused kernels (``use_liger_kernel``) and their CPU fallback;
- ``checkpointing``: checkpoints in object storage and resuming from them (the protocol is in its docstring);
- ``report``: values read back from the training log, the HTML report of the curves;
- ``save``: the trained model (LoRA merged) with its tokenizer and model card.

Launching (torchrun on this node, TrainJob, PAI-DLC) lives in ``distilflow.launch``.
"""
