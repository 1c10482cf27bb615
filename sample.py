"""Sample images from a CrossFlow checkpoint: ``python sample.py --ckpt PATH --prompt "a red circle"``."""

from crossflow.sample_cli import main

if __name__ == "__main__":
    main()
