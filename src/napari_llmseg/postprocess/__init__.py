"""Post-processing: probabilities -> labels (:mod:`.labels`), clean-up of labels chunk by chunk
(:mod:`.cleanup`), and objects with one id each across the whole input (:mod:`.instances`)."""
