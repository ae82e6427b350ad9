// Activation checkpointing: an autograd Function that runs a Rust closure (one decoder layer)
// without keeping its intermediate activations, saves only its inputs, and in the backward runs
// the closure again with gradients on and back-propagates through that recomputation.
//
// This is PyTorch's reentrant checkpoint (torch.utils.checkpoint, use_reentrant=True) in C++:
// the inner backward accumulates the layer's weight gradients into their .grad directly and
// returns the inputs' gradients to the outer graph, so `loss.backward()` stays the one entry
// point. The closure is deterministic (no dropout), so the recomputation equals the forward.
//
// The closure lives in Rust: `ctx` is its state, `call` runs it (taking ownership of every input
// handle, pushing its outputs with icpo_recompute_push or its error with icpo_recompute_error),
// `drop` frees it. The Function keeps the closure until its graph node is destroyed.

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <string>
#include <vector>

#include "ffi.h"

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

extern "C" {
typedef bool (*icpo_body_call)(void* ctx, Tensor** inputs, size_t n, void* out_sink,
                               void* err_sink);
typedef void (*icpo_body_drop)(void* ctx);
}

namespace {

// The Rust closure, owned: freed when the last reference (call site or graph node) goes.
struct Body : torch::CustomClassHolder {
  void* ctx;
  icpo_body_call call;
  icpo_body_drop drop;

  Body(void* c, icpo_body_call f, icpo_body_drop d) : ctx(c), call(f), drop(d) {}
  Body(const Body&) = delete;
  Body& operator=(const Body&) = delete;
  ~Body() override {
    if (drop) drop(ctx);
  }

  variable_list run(const variable_list& inputs) const {
    // Handles the closure takes ownership of, whatever it returns.
    std::vector<Tensor*> handles;
    handles.reserve(inputs.size());
    for (const Tensor& t : inputs) handles.push_back(new Tensor(t));
    variable_list outputs;
    std::string error;
    bool ok = call(ctx, handles.data(), handles.size(), &outputs, &error);
    TORCH_CHECK(ok, error);
    return outputs;
  }
};

struct Recompute : public torch::autograd::Function<Recompute> {
  // `inputs` ends with `extra` placeholder leaves the closure does not see (see icpo_recompute).
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs, int64_t extra,
                               c10::intrusive_ptr<Body> body) {
    variable_list real(inputs.begin(), inputs.end() - extra);
    // Grad mode is off here (Function::apply), so nothing inside the layer is kept.
    variable_list outputs = body->run(real);
    // Fresh non-view handles: the Function sets their history.
    for (Tensor& o : outputs) o = o.detach();
    ctx->save_for_backward(real);
    ctx->saved_data["extra"] = extra;
    ctx->saved_data["body"] = c10::IValue::make_capsule(body);
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list saved = ctx->get_saved_variables();
    int64_t extra = ctx->saved_data["extra"].toInt();
    auto body = c10::static_intrusive_pointer_cast<Body>(ctx->saved_data["body"].toCapsule());
    variable_list leaves;
    for (size_t i = 0; i < saved.size(); ++i) {
      Tensor t = saved[i].detach();
      t.requires_grad_(ctx->needs_input_grad(i) && t.is_floating_point());
      leaves.push_back(t);
    }
    variable_list outputs;
    {
      at::AutoGradMode on(true);
      outputs = body->run(leaves);
    }
    TORCH_CHECK(outputs.size() == grads.size(), "recompute: the layer returned ", outputs.size(),
                " tensors in the backward, ", grads.size(), " in the forward");
    variable_list roots, root_grads;
    for (size_t i = 0; i < outputs.size(); ++i) {
      if (grads[i].defined() && outputs[i].requires_grad()) {
        roots.push_back(outputs[i]);
        root_grads.push_back(grads[i]);
      }
    }
    // Reentrant: weight gradients accumulate into their .grad here.
    if (!roots.empty()) torch::autograd::backward(roots, root_grads);
    variable_list result;
    for (const Tensor& l : leaves) result.push_back(l.requires_grad() ? l.grad() : Tensor());
    for (int64_t k = 0; k < extra; ++k) result.push_back(Tensor());
    result.push_back(Tensor());  // `extra`
    result.push_back(Tensor());  // `body`
    return result;
  }
};

}  // namespace

extern "C" {

// Appends a copy of the handle `t` to the closure's outputs.
void icpo_recompute_push(void* out_sink, const Tensor* t) {
  static_cast<variable_list*>(out_sink)->push_back(*t);
}

// Sets the closure's error message.
void icpo_recompute_error(void* err_sink, const char* msg, size_t len) {
  static_cast<std::string*>(err_sink)->assign(msg, len);
}

// Runs the closure on `inputs` under activation checkpointing when grad mode is on (directly
// otherwise), writing at most `cap` output handles the caller owns and their count. Takes
// ownership of `ctx` in every case.
char* icpo_recompute(void* ctx, icpo_body_call call, icpo_body_drop drop,
                     const Tensor* const* inputs, size_t n, Tensor** outputs, size_t cap,
                     size_t* n_out) {
  auto body = c10::make_intrusive<Body>(ctx, call, drop);
  return icpo_ffi::guarded([&] {
    variable_list in;
    bool any_grad = false;
    for (size_t i = 0; i < n; ++i) {
      icpo_ffi::check(inputs[i] && inputs[i]->defined(), "recompute: undefined input");
      in.push_back(*inputs[i]);
      any_grad = any_grad || inputs[i]->requires_grad();
    }
    variable_list out;
    if (!at::GradMode::is_enabled()) {
      out = body->run(in);
    } else {
      // With no input needing a gradient (a frozen embedding) the output would not require one
      // and the layer's weights would get none: a placeholder leaf keeps the node in the graph.
      int64_t extra = any_grad ? 0 : 1;
      if (extra) in.push_back(at::empty({0}, at::TensorOptions().dtype(at::kFloat)).requires_grad_());
      out = Recompute::apply(at::TensorList(in), extra, body);
    }
    icpo_ffi::check(out.size() <= cap, "recompute: the layer returned " +
                                           std::to_string(out.size()) + " tensors, at most " +
                                           std::to_string(cap) + " allowed");
    for (size_t i = 0; i < out.size(); ++i) outputs[i] = new Tensor(out[i]);
    *n_out = out.size();
  });
}

}  // extern "C"
