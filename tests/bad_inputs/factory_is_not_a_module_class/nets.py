class Config:  # a plain class: calling it would build a Config, not a model
    def __init__(self, **kwargs):
        self.kwargs = kwargs
