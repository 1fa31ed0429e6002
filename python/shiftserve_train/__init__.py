"""shiftserve_train: DenseShift (power-of-two weight) training and export for shiftserve.

Modules:
  layers    ShiftConv2d / ShiftLinear (zero-free DenseShift codes and with-zero DeepShift/S3 codes)
  quant     8-bit activation fake-quant with static calibration (ActQuant)
  models    ResNet family, SLU shift ResNet, MPS tensor-train LSTM, dense LSTM
  features  log-mel (torch.stft), WAV loading, image preprocessing reference
  export    BN folding, bit-plane packing, graph JSON, safetensors writer
  reference reference forward pass that reads only an exported file
  importer  import of the authors' DenseShift / S3 latent checkpoints
  train     small training / evaluation loops with tqdm progress bars
"""

__version__ = "0.1.0"
