"""Training methods, one class each (full, LoRA, IA3, prompt tuning): `wrap()` turns a loaded
base model into the model to train. The parameter-efficient ones are peft's."""
TASK_TYPES = {"classification": "SEQ_CLS", "causal_lm": "CAUSAL_LM"}


class Method:
    name = ""

    def __init__(self, config):
        self.config = config

    def wrap(self, model):
        raise NotImplementedError

    def _peft(self, model, peft_config):
        from peft import get_peft_model

        return get_peft_model(model, peft_config)

    @property
    def task_type(self):
        return TASK_TYPES[self.config.task]


class Full(Method):
    name = "full"

    def wrap(self, model):
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model


class Lora(Method):
    name = "lora"

    def wrap(self, model):
        from peft import LoraConfig

        c = self.config
        return self._peft(model, LoraConfig(task_type=self.task_type, r=c.lora_r, lora_alpha=c.lora_alpha,
                                            lora_dropout=c.lora_dropout, target_modules=c.target_modules or None))


class IA3(Method):
    name = "ia3"

    def wrap(self, model):
        from peft import IA3Config

        targets = self.config.target_modules or None
        # With custom targets none is treated as a feed-forward layer (IA3 then scales outputs).
        return self._peft(model, IA3Config(task_type=self.task_type, target_modules=targets,
                                           feedforward_modules=[] if targets else None))


class PromptTuning(Method):
    name = "prompt_tuning"

    def wrap(self, model):
        from peft import PromptTuningConfig

        return self._peft(model, PromptTuningConfig(task_type=self.task_type,
                                                    num_virtual_tokens=self.config.num_virtual_tokens))


METHODS = {cls.name: cls for cls in (Full, Lora, IA3, PromptTuning)}


def for_config(config):
    return METHODS[config.method](config)
