"""The names the command line, the API, the files and the tests share, importable without torch.

The registries (``registry.METHODS``, ``models.MODEL_BUILDERS``) resolve these names to code; a
test keeps them in step. Keeping the names here lets the command line check a run's settings and
print its help before torch is imported.
"""

#: method name -> its learner, "module:Class", resolved on first use (so importing the package
#: never imports ``baselines``).
METHODS: dict[str, str] = {
    "bptt": "baselines.bptt:BPTT",
    "tbptt": "baselines.bptt:TBPTT",
    "rtrl": "baselines.rtrl:RTRL",
    "snap1": "baselines.snap1:SnAp1",
    "eprop": "baselines.eprop:EProp",
    "fwdgrad": "baselines.fwdgrad:ForwardGradient",
    "sigprop": "temporal_sigprop.sigprop:SigProp",
}
METHOD_NAMES = tuple(METHODS)

#: Models: the cell stacks (``models.cells.CELLS``) and the convolutional GRU for video.
MODEL_NAMES = ("rnn", "gru", "lstm", "lif", "discrete", "mlp", "convgru")

LOSS_PLACEMENTS = ("last", "every")
LR_SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adam", "sgd")
WANDB_MODES = ("offline", "online")
