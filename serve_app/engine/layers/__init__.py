"""Model building blocks: tensor-parallel linear/embedding layers, attention, rotary, norm."""
