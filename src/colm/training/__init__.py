"""One training run, as colm's commands set it up: prepare the model and data (`prepare_run`,
a RunPlan), check the training options' ranges (`option_ranges`) and the selection settings
against the data (`checks`), build the CoresetTrainer (`make_trainer`), measure its steps and
peak memory, and summarize the finished run (`run_summary`). `colm train`, `colm compare` and
`colm demo` are thin layers over these; a Python user can call them directly:

    from colm import CoresetConfig
    from colm.data.arguments import DataArguments
    from colm.models.arguments import ModelArguments
    from colm.training.plan import prepare_run
    from colm.training.trainer import make_trainer

    plan = prepare_run(ModelArguments(model="my/model", lora_r=16), DataArguments(data="mix/"),
                       training_args)       # a transformers.TrainingArguments
    trainer = make_trainer(plan.model, plan.tokenizer, plan.data.train, training_args, CoresetConfig())
    trainer.train()

Imports: anything but colm.compare and colm.cli (tests/test_layers.py checks it).
"""
