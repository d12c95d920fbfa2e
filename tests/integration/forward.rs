//! Forward through routes: equal to the computation written by hand, switching, and errors.

use burn::tensor::Tensor;
use snnet::{Anchor, AnyAnchor, Error, Features};

use super::common::{max_abs_diff, mini_family, to_vec, uniform_images, B};

fn vit(a: &AnyAnchor<B>) -> &snnet::Vit<B> {
    match a {
        AnyAnchor::Vit(v) => v,
        _ => panic!("the mini family is all ViT"),
    }
}

#[test]
fn stitched_route_equals_hand_written_computation() {
    let device = Default::default();
    let net = mini_family().build::<B>(&device).unwrap();
    let images = uniform_images(2, 3, 32, 1);
    // Mini family (depth 4, kernel 2): pairs (0,0)(0,1)(1,0)(1,1)(1,2)(2,1)(2,2)(2,3)(3,2)(3,3).
    for id in 0..net.num_routes() {
        let route = net.route(id).unwrap().clone();
        if route.is_anchor() {
            continue;
        }
        let (j, k) = route.stitch_cfgs[0];
        let (front, end) = (vit(&net.anchors[route.comb_id[0]]), vit(&net.anchors[route.comb_id[1]]));
        // Front: patch embedding, class token, position embedding, blocks 0..=j.
        let x = front.patch_embed.proj.forward(images.clone());
        let [b, c, gh, gw] = x.dims();
        let x = x.reshape([b, c, gh * gw]).swap_dims(1, 2);
        let cls = front.cls_token.val().repeat_dim(0, b);
        let mut x = Tensor::cat(vec![cls, x], 1) + front.pos_embed.val();
        for i in 0..=j {
            x = front.blocks[i].forward(x);
        }
        // Stitch: x Wᵀ + b with W in PyTorch orientation [out, in].
        let layer = &net.stitch_layers[route.slots[0]].transform;
        let w = layer.weight.val(); // burn stores [in, out]
        let bias = layer.bias.as_ref().unwrap().val();
        let [bb, n, cin] = x.dims();
        let cout = w.dims()[1];
        let mut x = (x.reshape([bb * n, cin]).matmul(w) + bias.unsqueeze()).reshape([bb, n, cout]);
        for i in k..4 {
            x = end.blocks[i].forward(x);
        }
        // Head on the class token, without the final norm (official stitched DeiT path).
        let [b, _, c] = x.dims();
        let expected = end.head.forward(x.narrow(1, 0, 1).reshape([b, c]));
        let got = net.forward(images.clone(), id).unwrap();
        let diff = max_abs_diff(&to_vec(got), &to_vec(expected));
        assert!(diff < 1e-5, "route {id}: max |diff| {diff}");
    }
}

#[test]
fn anchor_routes_are_the_anchors_own_forward_with_final_norm() {
    let device = Default::default();
    let net = mini_family().build::<B>(&device).unwrap();
    let images = uniform_images(2, 3, 32, 2);
    for a in 0..3 {
        let anchor = &net.anchors[a];
        let x = anchor.blocks(anchor.embed(images.clone()), 0..4);
        let Features::Tokens(t) = x else { panic!("tokens") };
        let v = vit(anchor);
        let [b, _, c] = t.dims();
        let expected = v.head.forward(v.norm.forward(t).narrow(1, 0, 1).reshape([b, c]));
        let got = net.forward(images.clone(), a).unwrap();
        assert!(max_abs_diff(&to_vec(got), &to_vec(expected)) < 1e-5);
    }
}

#[test]
fn switching_routes_changes_only_the_route() {
    let device = Default::default();
    let mut net = mini_family().build::<B>(&device).unwrap();
    let images = uniform_images(1, 3, 32, 3);
    let direct = to_vec(net.forward(images.clone(), 7).unwrap());
    net.select(7).unwrap();
    assert_eq!(net.selected(), 7);
    assert_eq!(to_vec(net.forward_selected(images.clone()).unwrap()), direct);
    net.select(2).unwrap();
    assert_ne!(to_vec(net.forward_selected(images).unwrap()), direct);
}

#[test]
fn bad_route_and_input_give_errors_naming_them() {
    let device = Default::default();
    let mut net = mini_family().build::<B>(&device).unwrap();
    let n = net.num_routes();
    match net.forward(uniform_images(1, 3, 32, 4), n) {
        Err(Error::UnknownRoute { id, num_routes }) => assert_eq!((id, num_routes), (n, n)),
        other => panic!("expected UnknownRoute, got {other:?}"),
    }
    assert!(net.select(n + 5).is_err());
    let err = net.forward(uniform_images(1, 1, 32, 4), 0).unwrap_err().to_string();
    assert!(err.contains("input images") && err.contains("[1, 3, 32, 32]"), "{err}");
    let err = net.forward(uniform_images(1, 3, 16, 4), 3).unwrap_err().to_string();
    assert!(err.contains("[1, 3, 16, 16]"), "{err}");
}
