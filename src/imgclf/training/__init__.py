"""Training: the loop, its events, optimizers and schedules, checkpoints.

(Named `training` so that `imgclf.train` stays the API function.)
"""
