"""Train CrossFlow: ``python train.py fit --config configs/demo.yaml`` (``--help`` lists every option)."""

from crossflow.cli import main

if __name__ == "__main__":
    main()
