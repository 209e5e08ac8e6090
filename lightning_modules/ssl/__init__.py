"""Self-supervised contrastive learning: one base module (`base.SSLModule`), small method subclasses, losses in
`losses.py`, heads in `heads.py`, optimizers and schedules in `optim.py`, ScoreCL's score network in `score_net.py`."""
