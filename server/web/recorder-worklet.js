// Audio worklet that hands the microphone's samples (channels averaged to mono) to the page in
// blocks, with the block's peak level for the meter. 'stop' flushes the last partial block.
class PcmRecorder extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Float32Array(2048);
    this.fill = 0;
    this.peak = 0;
    this.stopped = false;
    this.port.onmessage = (e) => {
      if (e.data === 'stop') {
        this.flush();
        this.stopped = true;
        this.port.postMessage({ done: true });
      }
    };
  }

  flush() {
    if (this.fill > 0) {
      this.port.postMessage({ samples: this.block.slice(0, this.fill), peak: this.peak });
    }
    this.fill = 0;
    this.peak = 0;
  }

  process(inputs) {
    if (this.stopped) return false;
    const input = inputs[0];
    if (input && input.length > 0) {
      const frames = input[0].length;
      for (let i = 0; i < frames; i++) {
        let s = 0;
        for (let c = 0; c < input.length; c++) s += input[c][i];
        s /= input.length;
        this.block[this.fill++] = s;
        const a = Math.abs(s);
        if (a > this.peak) this.peak = a;
        if (this.fill === this.block.length) this.flush();
      }
    }
    return true;
  }
}

registerProcessor('pcm-recorder', PcmRecorder);
