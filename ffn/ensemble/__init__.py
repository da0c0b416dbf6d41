"""Sweeps trained as one batched network (`hydra/launcher=ensemble`).

- `stack`: E members' parameters stacked, (E, d, H) and (E, H); the graph-free step's own
  `manual_gradients` runs on them, so every formula keeps its one home;
- `optim`: SGD (momentum, dampening, nesterov), Adam and AdamW over stacked tensors with each
  member's hyperparameters, read from and written back to the member's own torch.optim object;
- `group`: the members' ordinary basic-launcher jobs, run side by side (greenlets), whose
  minibatch steps are taken together.
"""
