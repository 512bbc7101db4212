"""One small model per standard layer family, as a user brings them: each a factory
``name(d)`` taking inputs of dimension d (flat digits features) and giving one output."""

from __future__ import annotations

from torch import nn


class _Tokens(nn.Module):
    """Flat features (n, d) as a sequence (n, T, e) of T = d / e tokens."""

    def __init__(self, d: int, e: int):
        super().__init__()
        self.e = e
        self.embed = nn.Linear(e, e)

    def forward(self, x):
        return self.embed(x.reshape(x.shape[0], -1, self.e))


class Attention(nn.Module):
    def __init__(self, d: int, e: int = 8):
        super().__init__()
        self.tokens = _Tokens(d, e)
        self.attn = nn.MultiheadAttention(e, 2, batch_first=True)
        self.readout = nn.Linear(e, 1)

    def forward(self, x):
        h = self.tokens(x)
        a, _ = self.attn(h, h, h)
        return self.readout((h + a).mean(1))


class Transformer(nn.Module):
    def __init__(self, d: int, e: int = 8):
        super().__init__()
        self.tokens = _Tokens(d, e)
        self.encoder = nn.TransformerEncoderLayer(e, 2, 16, dropout=0.1, activation="gelu", batch_first=True)
        self.readout = nn.Linear(e, 1)

    def forward(self, x):
        return self.readout(self.encoder(self.tokens(x)).mean(1))


class Recurrent(nn.Module):
    def __init__(self, d: int, e: int = 8, cell: type[nn.Module] = nn.LSTM):
        super().__init__()
        self.tokens = _Tokens(d, e)
        self.rnn = cell(e, 6, batch_first=True)
        self.readout = nn.Linear(6, 1)

    def forward(self, x):
        out, _ = self.rnn(self.tokens(x))
        return self.readout(out[:, -1])


class Normalised(nn.Module):
    def __init__(self, d: int, norm: type[nn.Module], width: int = 12):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, width), norm(width), nn.Dropout(0.2), nn.Tanh(), nn.Linear(width, 1))

    def forward(self, x):
        return self.net(x)


class Residual(nn.Module):
    def __init__(self, d: int, width: int = 12):
        super().__init__()
        self.inp = nn.Linear(d, width)
        self.block = nn.Sequential(nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))
        self.readout = nn.Linear(width, 1)

    def forward(self, x):
        h = self.inp(x)
        return self.readout(h + self.block(h))


def attention(d: int = 64) -> nn.Module:
    return Attention(d)


def transformer(d: int = 64) -> nn.Module:
    return Transformer(d)


def lstm(d: int = 64) -> nn.Module:
    return Recurrent(d, cell=nn.LSTM)


def gru(d: int = 64) -> nn.Module:
    return Recurrent(d, cell=nn.GRU)


def batchnorm(d: int = 64, width: int = 12) -> nn.Module:
    return Normalised(d, nn.BatchNorm1d, width)


def layernorm(d: int = 64) -> nn.Module:
    return Normalised(d, nn.LayerNorm)


def residual(d: int = 64) -> nn.Module:
    return Residual(d)


FAMILIES = ("attention", "transformer", "lstm", "gru", "batchnorm", "layernorm", "residual")
