"""The demos' training loop: a small NT3-like 1-D CNN on random data.

train(samples, epochs) yields (epoch, loss, model) after each epoch; the
demo scripts save model.state_dict() into the mount with torch.save.
"""
import torch


def train(samples, epochs, batch=64):
    torch.manual_seed(0)
    x = torch.randn(samples, 1, 128)
    y = (x.mean(dim=2).squeeze() > 0).long()
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 16, 7), torch.nn.ReLU(), torch.nn.MaxPool1d(2),
                                torch.nn.Conv1d(16, 16, 5), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(16 * 57, 2))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for epoch in range(epochs):
        for i in range(0, samples, batch):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[i:i + batch]), y[i:i + batch])
            loss.backward()
            opt.step()
        yield epoch, loss.item(), model
